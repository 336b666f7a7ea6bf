"""One module per algorithm: equations in the docstring, the math in ``update``, the class last."""
