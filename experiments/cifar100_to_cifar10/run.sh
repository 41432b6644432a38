#!/usr/bin/env bash
# CIFAR-100 -> CIFAR-10: the small-scale analogue of the paper's ImageNet -> CIFAR-10 study,
# run with the tool's own entry points. Every step is resumable: rerun the script after an
# interruption and it trains only what is missing.
#
#   bash experiments/cifar100_to_cifar10/run.sh              # 2-core CPU: ~1.5 h
#   PROFILE=cifar N_MODELS=2000 WORKERS=1 bash .../run.sh    # one GPU, full-resolution profile
#   EXECUTOR=ray RAY_ADDRESS=auto N_MODELS=7540 bash .../run.sh   # a Ray cluster (see README "Sweeps")
set -euo pipefail
cd "$(dirname "$0")/../.."
EXPERIMENT=${EXPERIMENT:-cifar100_to_cifar10}
PROFILE=${PROFILE:-quick}
N_MODELS=${N_MODELS:-400}
WORKERS=${WORKERS:-2}
EXECUTOR=${EXECUTOR:-local}
TUNE_TRIALS=${TUNE_TRIALS:-16}
KS=${KS:-0,10,20,30,40}
SEEDS=${SEEDS:-3}
BOOTSTRAP=${BOOTSTRAP:-200}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
mkdir -p mlruns

step() { echo; echo "== $* =="; }
step "1/4 tune the transfer recipe on the validation split ($TUNE_TRIALS trials)"
transfer-core tune --profile "$PROFILE" --n-trials "$TUNE_TRIALS" --experiment "$EXPERIMENT" \
  --study-name "$EXPERIMENT-$PROFILE"
step "2/4 sweep: $N_MODELS models on random halves of CIFAR-100"
transfer-core sweep --profile "$PROFILE" --n-models "$N_MODELS" --workers "$WORKERS" \
  --executor "$EXECUTOR" --transfer-params-from latest --experiment "$EXPERIMENT"
step "3/4 analyze: influences, findings, report"
transfer-core analyze --experiment "$EXPERIMENT" --output correct --bootstrap "$BOOTSTRAP"
step "4/4 counterfactuals: retrain without the top / bottom / random k classes"
# (retrains with the analysed sweep's own config, tuned transfer recipe included)
transfer-core counterfactual --experiment "$EXPERIMENT" --ks "$KS" --seeds "$SEEDS"
