from .StrokeRefinement import strokeRefinement

# SegmentEditorEffect.py needs the Slicer application; the effect machinery loads it by file path.
__all__ = ["strokeRefinement"]

