"""The table of benchmarks/segmenter.sh: per seed and as mean ± std (sample std) over the seeds,
the CAM (train split, best τ), the pseudo-labels (train split, on the pixels they label and
over every pixel with the uncertain ones counted as errors), and
the segmenter's predictions of the val split without and with the CRF, trained with the
cross-entropy alone and with the dense-CRF loss added; the pipeline's wall time.

    python3 benchmarks/segmenter_table.py runs/segmenter 0 1 2
"""
import sys

from seed_table import load, miou, print_table

out, seeds = sys.argv[1], sys.argv[2:]
columns = [
    ("CAM (train, best τ)", lambda s: 100.0 * load(f"{out}/ce-s{s}/eval/cam.json")["report"]["best"]["miou"]),
    ("pseudo-labels (train, labelled pixels)", lambda s: miou(load(f"{out}/ce-s{s}/eval/pseudo.json"))),
    ("labelled %", lambda s: 100.0 * load(f"{out}/ce-s{s}/eval/pseudo.json")["report"]["labelled"]),
    ("pseudo-labels (train, every pixel)", lambda s: 100.0 * load(f"{out}/ce-s{s}/eval/pseudo.json")["report"]["miou_all_pixels"]),
    ("segmenter, CE (val)", lambda s: miou(load(f"{out}/ce-s{s}/eval/seg.json"))),
    ("segmenter, CE, + CRF (val)", lambda s: miou(load(f"{out}/ce-s{s}/eval/seg_crf.json"))),
    ("segmenter, CE + CRF loss (val)", lambda s: miou(load(f"{out}/crf-s{s}/eval/seg.json"))),
    ("segmenter, CE + CRF loss, + CRF (val)", lambda s: miou(load(f"{out}/crf-s{s}/eval/seg_crf.json"))),
    ("pipeline s", lambda s: (load(f"{out}/ce-s{s}.time.json") or {}).get("seconds")),
]


print_table(columns, seeds)
