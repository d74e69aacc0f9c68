"""Default settings of edge refinement, importable without numpy (the CLI's --help stays instant)."""

# Chosen by the perturbation experiment on validation cases (benchmarks/results/edges_perturbation.md).
DEFAULT_METHOD = "meanfield"
# 0.3 keeps unperturbed reference masks within 0.005 Dice (stronger settings move edges to intensity
# edges that the annotators' convention does not follow); users raise it where they see an error.
DEFAULT_STRENGTH = 0.3
DEFAULT_BAND_MM = 3.0
# "learned": the model's own boundary refiner (a part of its checkpoint, see e2miseg.refiner_part);
# only models that carry one accept it, and for them it is what "refine edges" means by default.
LEARNED_METHOD = "learned"
CLASSICAL_METHOD_NAMES = ("meanfield", "guided", "geodesic")
METHOD_NAMES = CLASSICAL_METHOD_NAMES + (LEARNED_METHOD,)
