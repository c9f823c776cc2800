"""`deepfusion eval scenes`: a prompt-following benchmark on synthetic scenes (a small GenEval/DPG-bench).

    specs.py     held-out compositional prompts per category, each with its ground-truth scene
    analyse.py   facts from pixels (calibrated on ground-truth renders) or from a scene graph,
                 and one checker per category that both kinds of facts go through
    run.py       images per prompt with fixed seeds, scores, accuracy with Wilson intervals
"""

from .analyse import Calibration, calibrate, check, facts_from_image, facts_from_scene
from .specs import CATEGORIES, Spec, make_specs

__all__ = ["CATEGORIES", "Spec", "make_specs", "Calibration", "calibrate", "check", "facts_from_image",
           "facts_from_scene"]
