"""The paper's experiments, one module each (run through ``dwp experiment ...``)."""
