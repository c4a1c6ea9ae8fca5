"""One outside system each (git, virtualenvs, Django, Supervisord, the health URL, the
release tree, state, the lock), translated into our own errors at its border.

Parts import no engine, delivery or daemon module, and each other only through the shared
modules named in `tests/test_layers.py` (`runner`, the one door for subprocesses, and `fs`);
a helper split out of one part (`release_tree` and `release_spare` of `gitsource`,
`venv_bytecode` of `venvs`, `django_findings` and `warm_gate` of `django_steps`,
`supervisor_link`, `run_failure`) is imported
by that part only (and by its siblings).
"""
