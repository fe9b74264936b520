#!/usr/bin/env bash
# From your own edge list to the top 20 recommended links of every node, each with the
# neighbours behind it, with the ncnc CLI:
#   ncnc train -> ncnc export -> ncnc candidates -> ncnc score --top-k 20 --per-source --explain 3
#
#   examples/own_graph/run.sh [EDGES.parquet [FEATURES.parquet]]
#
# EDGES.parquet: columns src, dst (string or integer ids; undirected, duplicates are dropped).
# FEATURES.parquet (optional): column node plus numeric columns, or one list column.
# Without EDGES a sample graph of string user ids is generated first (make_sample.py).
#
# Settings (environment variables, defaults in brackets):
#   OUT [own_graph_output]  folder for everything written
#   MODEL [ncnc]            gae, ncn or ncnc
#   EPOCHS [20]  HIDDEN [64]  TOP_K [20]
#   EXPLAIN [3; 0 for gae]  neighbours listed behind each recommendation (0: no because column;
#                           a GAE model has no common-neighbour term, nothing to list)
#   SAMPLE_NODES [2000]     size of the generated sample graph
#   PYTHON [python3]        the interpreter ncnc is installed in (for the sample and the preview)
# ncnc must be on PATH (`. .venv/bin/activate` after `make install`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-own_graph_output}
python=${PYTHON:-python3}
mkdir -p "$out"

if (($# >= 1)); then
    edges=$1
    features=${2:-}
else
    "$python" "$here/make_sample.py" "$out/sample" --nodes "${SAMPLE_NODES:-2000}"
    edges=$out/sample/edges.parquet
    features=$out/sample/features.parquet
fi

ncnc train --model "${MODEL:-ncnc}" --edges "$edges" ${features:+--features "$features"} \
    --epochs "${EPOCHS:-20}" --hidden "${HIDDEN:-64}" --out "$out/checkpoint"
ncnc export --checkpoint "$out/checkpoint" --out "$out/bundle"
# Both directions, so that --per-source below ranks the candidates of every node.
ncnc candidates --bundle "$out/bundle" --out "$out/candidates.parquet" --both-directions
if [[ ${MODEL:-ncnc} == gae ]]; then explain=${EXPLAIN:-0}; else explain=${EXPLAIN:-3}; fi
explain_flags=()
if ((explain > 0)); then explain_flags=(--explain "$explain"); fi
ncnc score --bundle "$out/bundle" --pairs "$out/candidates.parquet" \
    --out "$out/recommendations.parquet" --top-k "${TOP_K:-20}" --per-source \
    ${explain_flags[@]+"${explain_flags[@]}"} --report "$out/score_report.json"

if ((explain > 0)); then
    "$python" "$here/show_reasons.py" "$out/recommendations.parquet" --users 3 --top 3
    echo "recommendations: $out/recommendations.parquet (src, dst, score, prob, rank, because)"
else
    "$python" -c 'import sys, polars as pl; print(pl.read_parquet(sys.argv[1]).head(10))' \
        "$out/recommendations.parquet"
    echo "recommendations: $out/recommendations.parquet (src, dst, score, prob, rank)"
fi
