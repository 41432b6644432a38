#!/usr/bin/env bash
# CIFAR-100 -> CIFAR-10: the small-scale analogue of the paper's ImageNet -> CIFAR-10 study,
# run with the tool's own entry points. Every step is resumable: rerun the script after an
# interruption and it trains only what is missing. The last step writes docs/results/RESULTS.md,
# the tables and figures the README's "Results" section quotes.
#
#   bash experiments/cifar100_to_cifar10/run.sh              # 2-core CPU: 500 models (the sweep alone 55 min)
#   PROFILE=cifar N_MODELS=2000 WORKERS=1 bash .../run.sh    # one GPU, full-resolution profile
#   EXECUTOR=ray RAY_ADDRESS=auto N_MODELS=7540 bash .../run.sh   # a Ray cluster (see README "Sweeps")
#
# Every setting below can be given in the environment. SET adds config overrides
# (space-separated FIELD=VALUE) to tuning and sweep, and WORKDIR moves mlruns/ elsewhere; the test
# suite (tests/workflow/test_experiment.py) uses both to run a CI-sized copy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "${WORKDIR:-$ROOT}"  # mlruns/ (store, artifacts, Optuna journals) lives here
EXPERIMENT=${EXPERIMENT:-cifar100_to_cifar10}
PROFILE=${PROFILE:-quick}
N_MODELS=${N_MODELS:-500}
WORKERS=${WORKERS:-2}
EXECUTOR=${EXECUTOR:-local}
TUNE_TRIALS=${TUNE_TRIALS:-16}
KS=${KS:-0,10,20,30,40}
SEEDS=${SEEDS:-5}
BOOTSTRAP=${BOOTSTRAP:-200}
MIN_RUNS=${MIN_RUNS:-5}
OUT=${OUT:-$ROOT/docs/results}
SET=${SET:-}
SUBPOPULATION=${SUBPOPULATION:-}  # TARGET:SOURCE shown in RESULTS.md; empty: the largest group
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
mkdir -p mlruns
overrides=()
for item in $SET; do overrides+=(--set "$item"); done

step() { echo; echo "== $* =="; }
step "1/6 tune the transfer recipe on the validation split ($TUNE_TRIALS trials)"
transfer-core tune --profile "$PROFILE" ${overrides[@]+"${overrides[@]}"} --total-trials "$TUNE_TRIALS" \
  --experiment "$EXPERIMENT" --study-name "$EXPERIMENT-$PROFILE" --no-progress
step "2/6 sweep: $N_MODELS models on random halves of the source classes"
transfer-core sweep --profile "$PROFILE" ${overrides[@]+"${overrides[@]}"} --n-models "$N_MODELS" \
  --workers "$WORKERS" --executor "$EXECUTOR" --transfer-params-from latest --experiment "$EXPERIMENT"
step "3/6 analyze: influences, findings, report"
transfer-core analyze --experiment "$EXPERIMENT" --output correct --bootstrap "$BOOTSTRAP" --min-runs "$MIN_RUNS"
step "4/6 counterfactuals: retrain without the top / bottom / random k classes"
# (removes classes by the validation ranking; retrains with the analysed sweep's own config, tuned recipe included)
transfer-core counterfactual --experiment "$EXPERIMENT" --ks "$KS" --seeds "$SEEDS" --workers "$WORKERS"
step "5/6 register the champion: the pruned source only on held-out evidence"
transfer-core register --experiment "$EXPERIMENT"
step "6/6 publish: RESULTS.md, tables and figures into $OUT"
transfer-core publish --experiment "$EXPERIMENT" --out "$OUT" ${SUBPOPULATION:+--subpopulation "$SUBPOPULATION"}
