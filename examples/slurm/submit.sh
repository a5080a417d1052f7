#!/bin/bash
# The whole HPC flow: featurize as a job array, merge, then train fold 0 on 2 nodes.
#   DATA=/scratch/audio bash submit.sh
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p logs
export DATA=${DATA:?set DATA} OUT=${OUT:-shards} FEATURES=${FEATURES:-features.h5}
array=$(sbatch --parsable --array=0-15 featurize-array.sbatch)
merge=$(sbatch --parsable --dependency=afterok:"$array" merge.sbatch)
sbatch --dependency=afterok:"$merge" --nodes=2 train.sbatch
