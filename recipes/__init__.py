"""The recipes: command-line programs over the library, installed as ``turing_models.recipes``.

From a checkout run ``python recipes/<name>.py``; from an installed wheel run
``python -m turing_models.recipes.<name>``. The recipes' configs (``configs/``) and bundled data
(``data/``) ship beside them, so named configs and data defaults work from any folder.
"""
