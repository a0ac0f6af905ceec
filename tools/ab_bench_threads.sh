#!/bin/bash
# hchoice: tools/bench.py --peers, NumPy backend, this branch and main ($MAIN) alternating,
# each followed by the thread choice of a fresh (32, 50, 256) model after 40 steps.
out=${OUT:-/tmp/hchoice/bench_runs}
main=${MAIN:-/tmp/hchoice/main}
mkdir -p $out
for run in 1 2 3; do
  for name in branch main; do
    r=$PWD; [ $name = main ] && r=$main
    echo "load before: $(cat /proc/loadavg)" > $out/$name-$run.txt
    python $r/tools/bench.py --peers --backends numpy --cells FastLSTM --configs 32,50,256 32,50,512 --budget 12 >> $out/$name-$run.txt 2>/dev/null
    echo "load after: $(cat /proc/loadavg)" >> $out/$name-$run.txt
  done
done
echo done > $out/done
