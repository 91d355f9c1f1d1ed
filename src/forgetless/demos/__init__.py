"""Small self-contained demos that need only the core dependencies (``forgetless demo words``)."""
