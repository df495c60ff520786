# Helpers of the benchmark scripts (sourced).
# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# Field $1 of the JSON object on the last line of stdin.
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
# The executable of Cargo bench target $1 (built with `cargo bench --no-run`).
bench_exe() { cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null | python3 -c "import json,sys; print([m['executable'] for m in map(json.loads, sys.stdin) if m.get('executable') and m['target']['name'] == '$1'][0])"; }
