"""GAE, NCN and NCNC link predictors (Wang, Yang, Zhang, ICLR 2024, arXiv 2302.00890).

Layer by layer this follows the official code (GraphPKU/NeuralCommonNeighbor, ``model.py``): the
encoder is its ``GCN`` with ``puregcn`` or ``gcn`` convolutions, the predictors its ``cn0`` (GAE),
``cn1`` (NCN) and ``incn1cn1`` (NCNC). The common-neighbour step always goes through
:mod:`ncnc.triton_kernels` (pair scoring: :func:`~ncnc.triton_kernels.pair_scoring.pair_logits`,
shared with the exporter and the scorer).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

from ncnc.trainer.config import ModelConfig
from ncnc.trainer.dropout import Dropout
from ncnc.triton_kernels import CSRGraph
from ncnc.triton_kernels.completion import Calibration
from ncnc.triton_kernels.pair_scoring import LazyLevels, PairRule, pair_logits

# torch.sparse.mm over CSR is the fastest CPU propagation; its "beta" notice is noise for users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _layer_norm(dim: int, enabled: bool) -> nn.Module:
    return nn.LayerNorm(dim) if enabled else nn.Identity()


def drop_entries(graph: CSRGraph, p: float) -> CSRGraph:
    """Edge dropout on CSR entries (each direction independently, as the reference's DropAdj)."""
    if p <= 0.0:
        return graph
    keep = torch.rand(graph.num_entries, device=graph.indices.device) > p
    return mask_entries(graph, keep)


def mask_entries(graph: CSRGraph, keep: Tensor) -> CSRGraph:
    """The sub-graph of the entries where ``keep`` is true; rows stay sorted."""
    rows = torch.repeat_interleave(torch.arange(graph.num_nodes, device=keep.device), graph.degree())
    counts = torch.bincount(rows[keep], minlength=graph.num_nodes)
    indptr = torch.zeros_like(graph.indptr)
    indptr[1:] = torch.cumsum(counts, 0)
    return CSRGraph(indptr, graph.indices[keep])


def gcn_propagate(x: Tensor, graph: CSRGraph, entry_weight: Tensor | None = None) -> Tensor:
    """``D^-1/2 (A + I) D^-1/2 x`` with ``D = 1 + rowsum(A)`` (the reference ``puregcn`` step)."""
    n = graph.num_nodes
    if entry_weight is None:
        entry_weight = torch.ones(graph.num_entries, dtype=x.dtype, device=x.device)
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), graph.degree())
    degree = torch.ones(n, dtype=x.dtype, device=x.device).index_add_(0, rows, entry_weight)
    norm = degree.rsqrt().unsqueeze(1)
    adjacency = torch.sparse_csr_tensor(
        graph.indptr, graph.indices.long(), entry_weight, (n, n), check_invariants=False
    )
    scaled = norm * x
    return norm * (torch.sparse.mm(adjacency, scaled) + scaled)


class Encoder(nn.Module):
    """Message-passing encoder producing node representations ``h`` of shape ``[n, hidden]``.

    ``puregcn``: Dropout(xdp) -> Linear -> Dropout(gnndp), then ``mp_layers`` parameter-free GCN
    propagations, Dropout(tdp) after the last. ``gcn``: PyG ``GCNConv`` layers with
    LayerNorm / Dropout / ReLU between them. Both: optional residual and jumping knowledge
    (learned per-layer scalars, randomly initialised, weighting each layer's output).
    Without input features a learnable embedding (orthogonal init) replaces ``X``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pure = cfg.encoder == "puregcn"
        self.res = cfg.res
        self.gnnedp = cfg.gnnedp
        d = cfg.hidden
        if cfg.in_features == 0:
            self.embedding = nn.Embedding(cfg.num_nodes, d)
            nn.init.orthogonal_(self.embedding.weight)
            self.input = Dropout(cfg.gnndp)
            in_dim = d
        else:
            self.embedding = None
            layers: list[nn.Module] = [Dropout(cfg.xdp)]
            if self.pure:
                layers += [nn.Linear(cfg.in_features, d), Dropout(cfg.gnndp)]
            self.input = nn.Sequential(*layers)
            in_dim = d if self.pure else cfg.in_features
        self.convs = nn.ModuleList()
        self.posts = nn.ModuleList()
        for layer in range(cfg.mp_layers):
            last = layer == cfg.mp_layers - 1
            if self.pure:
                self.convs.append(nn.Identity())  # propagation has no parameters
                self.posts.append(Dropout(cfg.tdp) if last else nn.Identity())
            else:
                self.convs.append(GCNConv(in_dim if layer == 0 else d, d))
                self.posts.append(
                    nn.Identity() if last and layer > 0
                    else nn.Sequential(_layer_norm(d, cfg.ln_encoder), Dropout(cfg.gnndp), nn.ReLU())
                )
        self.jk = nn.Parameter(torch.randn(cfg.mp_layers)) if cfg.jk and cfg.mp_layers > 0 else None

    def forward(self, x: Tensor | None, graph: CSRGraph) -> Tensor:
        """Node representations ``[n, hidden]`` of ``graph``'s ``n`` nodes.

        ``x``: node features ``[n, in_features]``. A featureless model reads its learned table
        when ``x`` is None, or ``x`` as its input table ``[n, hidden]``: rows for the nodes of
        another graph, such as a newer snapshot (:mod:`ncnc.trainer.inductive`).
        """
        if self.embedding is not None and x is None:
            x = self.embedding.weight
        h = self.input(x)
        edge_index = None if self.pure else graph.edge_index()
        entry_weight = None
        if self.training and self.gnnedp > 0:
            keep = torch.rand(graph.num_entries, device=h.device) > self.gnnedp
            graph = mask_entries(graph, keep)
            if edge_index is not None:
                edge_index = edge_index[:, keep]
            entry_weight = torch.full(
                (graph.num_entries,), 1.0 / (1.0 - self.gnnedp), dtype=h.dtype, device=h.device
            )
        layer_outputs = []
        for conv, post in zip(self.convs, self.posts):
            if self.pure:
                out = post(gcn_propagate(h, graph, entry_weight))
            else:
                out = post(conv(h, edge_index, entry_weight))
            h = out + h if self.res and out.shape == h.shape else out
            layer_outputs.append(h)
        if self.jk is not None:
            h = (torch.stack(layer_outputs) * self.jk.view(-1, 1, 1)).sum(0)
        return h


class PairPredictor(nn.Module):
    """Scores target pairs from node representations: GAE, NCN or NCNC.

    NCN: ``logit = lin(beta * xcnlin(cn) + xijlin(h_i * h_j))`` with
    ``cn = sum_{u in N(i) & N(j)} x~_u`` and ``x~ = h + xlin(h)``.
    NCNC adds the completed neighbours ``N(i) \\ N(j)`` and ``N(j) \\ N(i)``, each weighted by the
    calibrated NCN probability that the missing edge exists. GAE drops the ``cn`` term.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, p, ln = cfg.hidden, cfg.predp, cfg.ln_predictor
        self.cfg = cfg
        self.uses_cn = cfg.model != "gae"
        self.calibration = Calibration(cfg.probscale, cfg.proboffset, cfg.pt, cfg.alpha)
        tail = [nn.Identity()] if cfg.tailact else [nn.Linear(d, d)]
        self.xijlin = nn.Sequential(nn.Linear(d, d), _layer_norm(d, ln), Dropout(p), nn.ReLU(), *tail)
        two = (
            [nn.Linear(d, d), _layer_norm(d, ln), Dropout(p), nn.ReLU()] if cfg.twolayerlin else []
        )
        self.lin = nn.Sequential(
            nn.Linear(d, d), _layer_norm(d, ln), Dropout(p), nn.ReLU(), *two, nn.Linear(d, 1)
        )
        if self.uses_cn:
            self.beta = nn.Parameter(torch.full((1,), cfg.beta))
            self.xcnlin = nn.Sequential(
                nn.Linear(d, d), Dropout(p), nn.ReLU(),
                nn.Linear(d, d), _layer_norm(d, ln), Dropout(p), nn.ReLU(), *tail,
            )
            self.xlin = (
                nn.Sequential(
                    nn.Linear(d, d), Dropout(p), nn.ReLU(),
                    nn.Linear(d, d), _layer_norm(d, ln), Dropout(p), nn.ReLU(),
                )
                if cfg.use_xlin else None
            )

    @property
    def depth(self) -> int:
        return self.cfg.depth if self.cfg.model == "ncnc" else 0

    def transform(self, h: Tensor) -> Tensor:
        """``x~ = h + xlin(h)``: the node table the common-neighbour step sums."""
        return h + self.xlin(h) if self.xlin is not None else h

    def head(self, cn: Tensor | None, xij: Tensor) -> Tensor:
        """Final MLP from the (completed) common-neighbour sum and ``h_i * h_j`` to logits [B]
        (GAE reads ``xij`` only; its ``cn`` is None)."""
        if not self.uses_cn:
            return self.lin(self.xijlin(xij)).squeeze(-1)
        return self.lin(self.xcnlin(cn) * self.beta + self.xijlin(xij)).squeeze(-1)

    def rule(self) -> PairRule:
        """The recursion's settings for the current mode: training caps its completion sets with
        ``train_cap`` and redraws the capped samples every call (the reference samples with
        torch.rand); evaluation uses ``test_cap`` and the fixed, documented hash rule, so its
        scores are reproducible (and equal the exported bundle's)."""
        cap = self.cfg.train_cap if self.training else self.cfg.test_cap
        seed = int(torch.randint(0, 2**31 - 1, (1,))) if self.training else self.cfg.cap_seed
        return PairRule(self.cfg.model, self.depth, self.calibration, cap, seed)

    def levels(self, h: Tensor) -> LazyLevels:
        """The node tables of :func:`~ncnc.triton_kernels.pair_scoring.pair_logits` for ``h``.

        Fidelity: like the reference, NCNC's inner call receives the transformed ``x~`` and
        transforms it once more (level 2 = ``x~ + xlin(x~)``)."""
        return LazyLevels(h, self.transform)

    def forward(self, h: Tensor, graph: CSRGraph, pairs: Tensor,
                levels: LazyLevels | None = None, depth: int | None = None) -> Tensor:
        """Logits ``[B]`` of ``pairs`` ``[B, 2]`` given the encoder output ``h`` ``[n, d]``.

        ``levels`` (from :meth:`levels`) may be shared by several calls in eval mode; ``depth``
        overrides the completion depth (0: this NCNC model's NCN logits, as its inner call)."""
        drop = (functools.partial(drop_entries, p=self.cfg.preedp)
                if self.training and self.cfg.preedp > 0 else None)
        return pair_logits(self.rule(), self.head, graph, levels or self.levels(h), pairs,
                           drop_edges=drop, depth=depth)


class LinkPredictionModel(nn.Module):
    """Encoder plus pair predictor; ``forward`` scores pairs of node indices with logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.predictor = PairPredictor(cfg)

    def forward(self, x: Tensor | None, graph: CSRGraph, pairs: Tensor) -> Tensor:
        return self.predictor(self.encoder(x, graph), graph, pairs)

    @torch.no_grad()
    def score(
        self, x: Tensor | None, graph: CSRGraph, pairs: Tensor, batch_size: int = 8192
    ) -> Tensor:
        """Eval-mode logits [B] for ``pairs`` [B, 2], the encoder run once."""
        was_training = self.training
        self.eval()
        try:
            h = self.encoder(x, graph)
            levels = self.predictor.levels(h)  # tabulated once for every chunk
            chunks = [self.predictor(h, graph, p, levels) for p in pairs.split(batch_size)]
            return torch.cat(chunks) if chunks else torch.zeros(0, device=h.device)
        finally:
            self.train(was_training)


def link_loss(pos_logits: Tensor, neg_logits: Tensor) -> Tensor:
    """``-log sigmoid(pos) - log sigmoid(-neg)``, each term averaged over its batch."""
    return -F.logsigmoid(pos_logits).mean() - F.logsigmoid(-neg_logits).mean()
