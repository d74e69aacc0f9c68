"""e2miseg-train: plans, trains, evaluates and exports checkpoints for the e2miseg engine.

The engine (``e2miseg``) owns the networks, the losses, preprocessing, inference and the checkpoint
format; this package only drives them, so a trained model sees exactly the data it will see in Slicer.
"""
__version__ = "0.1.0"
