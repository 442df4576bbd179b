#!/bin/bash
# two queues, one thread each
cd /work/draft/s46/cw
fit() { PYTHONPATH=/work/draft/s46/cw/src /work/main/.venv/bin/privacysf fit --dataset $1 --seed $2 --quiet --set train.threads=1 --out /work/draft/s46/cwruns/$3 "${@:4}" > /work/draft/s46/cwruns/logs/$3-$1-s$2.log 2>&1; }
B="--set codec.task_class_weights=balanced"
( fit phantom 0 balanced $B; fit totalseg-ct 0 balanced $B; fit icbm152-tissue 1 balanced $B; fit dsb-nuclei 0 balanced $B; fit phantom 2 balanced $B; fit totalseg-ct 2 balanced $B; fit dsb-nuclei 2 balanced $B ) &
( fit icbm152-tissue 0 control; fit icbm152-tissue 0 balanced $B; fit phantom 1 balanced $B; fit totalseg-ct 1 balanced $B; fit icbm152-tissue 2 balanced $B; fit dsb-nuclei 1 balanced $B ) &
wait
echo ALLDONE > /work/draft/s46/cwruns/logs/done
