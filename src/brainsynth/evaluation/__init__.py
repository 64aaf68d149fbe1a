"""evaluate's metrics: the families (how they are computed, as functions of plain arrays), the
utility protocol (the downstream classifiers) and the headline. Each metric's identity is its row in
``brainsynth.catalogue``."""
