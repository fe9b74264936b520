#!/usr/bin/env bash
# What a scheduler (cron, Airflow's BashOperator) runs each night: refresh the bundle against
# today's graph without retraining, score today's candidate pairs, publish the result atomically.
#
#   examples/nightly_job.sh CHECKPOINT TODAY_EDGES.parquet CANDIDATES PUBLISH_ROOT
#
# Today's graph defines the bundle: nodes that joined since training are embedded (from today's
# features, or for a model without features by its cold-start rule), nodes that left are gone.
# `ncnc export` prints how many joined and left, and the rule that embedded the new ones.
#
# CANDIDATES: Parquet file(s) of pairs (src, dst) - a file, a folder or a quoted glob - or `-`
#   for today's two-hop candidates of every node (ncnc candidates), the new nodes' included.
# Settings (environment variables, defaults in brackets):
#   FEATURES []                        today's node features (node + feature columns): needed
#                                      on a night when nodes joined, if the model reads features
#   RUN_ID [today's date, YYYY-MM-DD]  name of the published folder
#   TOP_K [20]                         recommendations kept per source node
#
# Layout under PUBLISH_ROOT (the publishing is a rename, so keep work and output on one filesystem):
#   .work/RUN_ID/    this run in progress: bundle/, [candidates.parquet,] recommendations.parquet,
#                    report.json and score's resume state; a failed or killed run leaves it for
#                    the retry
#   RUN_ID/          the finished run, moved here only after every step succeeded (the paths
#                    inside report.json and bundle/manifest.json name .work/RUN_ID, where they ran)
#   latest -> RUN_ID swapped atomically, so readers see yesterday's or today's output, never a mix
#
# Exit codes, as ncnc's: 0 published (or already published), 2 bad input (fix the data; a retry
# will not help), 1 internal failure (retrying may help). On failure `latest` is not touched.
# Needs GNU coreutils (mv -T).
set -euo pipefail

if (($# != 4)); then
    echo "usage: $0 CHECKPOINT TODAY_EDGES.parquet CANDIDATES PUBLISH_ROOT" >&2
    exit 2
fi
checkpoint=$1 edges=$2 candidates=$3 root=$4
run_id=${RUN_ID:-$(date +%F)}
work=$root/.work/$run_id
published=$root/$run_id

if [[ -e $published ]]; then  # a rerun of a night that succeeded changes nothing
    echo "nightly: $published is already published" >&2
    exit 0
fi
mkdir -p "$work"

# Run one ncnc step; on failure name the step and the kind of failure, and exit with its code.
step() {
    local name=$1 code=0
    shift
    "$@" || code=$?
    case $code in
        0) return ;;
        2) echo "nightly: $name refused its input (exit 2); nothing published" >&2 ;;
        *) echo "nightly: $name failed (exit $code, internal failure); nothing published" >&2 ;;
    esac
    exit "$code"
}

# export writes its bundle atomically, so one that exists is complete: a retry reuses it.
if [[ ! -f $work/bundle/manifest.json ]]; then
    step export ncnc export --checkpoint "$checkpoint" --edges "$edges" \
        ${FEATURES:+--features "$FEATURES"} --out "$work/bundle"
fi
if [[ $candidates == - ]]; then  # also written atomically: one that exists is complete
    candidates=$work/candidates.parquet
    if [[ ! -f $candidates ]]; then
        step candidates ncnc candidates --bundle "$work/bundle" --out "$candidates" \
            --both-directions --quiet
    fi
fi
# --resume: a retry after a kill continues from the last committed chunk of pairs.
step score ncnc score --bundle "$work/bundle" --pairs "$candidates" \
    --out "$work/recommendations.parquet" --top-k "${TOP_K:-20}" --per-source \
    --resume --report "$work/report.json" --quiet

mv -T "$work" "$published"
ln -sfn "$run_id" "$root/.latest.new"
mv -T "$root/.latest.new" "$root/latest"
echo "nightly: published $published" >&2
