"""A Markdown table of figures per seed and their mean ± std (sample std) over the seeds, for
the benchmark scripts' tables (segmenter_table.py, irn_table.py)."""
import json
import statistics


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def miou(report):
    return None if report is None else 100.0 * report["report"]["miou"]


def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def print_table(columns, seeds):
    """`columns`: (name, function of the seed giving a number or None; a missing file may
    raise TypeError or KeyError, shown as –)."""
    print("| seed | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    table = {name: [] for name, _ in columns}
    for seed in seeds:
        row = []
        for name, get in columns:
            try:
                value = get(seed)
            except (TypeError, KeyError):
                value = None
            table[name].append(value)
            row.append("–" if value is None else f"{value:.1f}")
        print(f"| {seed} | " + " | ".join(row) + " |")
    print(f"| mean ± std ({len(seeds)}) | " + " | ".join(cell(table[name]) for name, _ in columns) + " |")
