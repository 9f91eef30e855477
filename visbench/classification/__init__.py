"""Classification training and evaluation engine (timm pieces)."""
