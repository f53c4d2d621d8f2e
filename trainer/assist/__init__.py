"""Assist: a teacher model on the server pre-labels unlabelled examples so reviewers correct, not draw.

``Assist(store, AssistConfig).start()`` loads the teacher (``teacher.py``) and runs the background
worker (``worker.py``); pre-labels live in the store's ``prelabels`` table (``prelabels.py``) and
become labels only when accepted (``prelabels.accept``, ``POST /api/items/{id}/accept-prelabel``;
``prelabels.accept_all`` for --auto-label runs). ``unlabelled.py`` imports folders of unlabelled
images; ``cli.py`` is ``edgeloop assist import|run|status``.
"""

from .config import AssistConfig  # the rest is imported where used: it loads onnxruntime and OpenCV

__all__ = ["AssistConfig"]
