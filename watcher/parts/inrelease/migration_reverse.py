"""What `watcher rollback --migrate` must reverse, decided inside the newer release's Django.

Plain Python for the release's own interpreter (Django 4.2 to 5.x): watcher reads this file
and execs it, so it cannot import watcher. It reads the migration graph and the applied
migrations only; it changes nothing.

    reversal(executor, {"pages": "0001_initial", ...})   # the older release's leaves
    # {"migrations": ["pages.0003_b", "pages.0002_a"],          # in the order Django unapplies
    #  "commands": [["pages", "0001_initial"]],                  # migrate APP TARGET, in order
    #  "irreversible": ["pages.0003_b: RunPython(...)"], "problems": []}
"""


def reversal(executor, leaves):
    graph = executor.loader.graph
    applied = executor.loader.applied_migrations
    apps = sorted({app for app, _ in graph.nodes})
    targets, problems = [], []
    for app in apps:
        name = leaves.get(app)
        if name is None:
            if any(key[0] == app for key in applied):
                targets.append((app, None))
        elif (app, name) not in graph.nodes:
            problems.append(f"{app}.{name} is not among the live release's migrations")
        elif (app, name) in applied:
            targets.append((app, name))
    if problems:
        return {"migrations": [], "commands": [], "irreversible": [], "problems": problems}
    plan = executor.migration_plan(targets) if targets else []
    forwards = [f"{m.app_label}.{m.name}" for m, backwards in plan if not backwards]
    if forwards:
        problems.append("the older release knows migrations that are not applied: "
                        + ", ".join(forwards))
    undo = [m for m, backwards in plan if backwards]
    irreversible = []
    for migration in undo:
        for op in migration.operations:
            if not op.reversible:
                irreversible.append(f"{migration.app_label}.{migration.name}: "
                                    f"{type(op).__name__} cannot be reversed")
    # One `migrate APP TARGET` per app, ordered by the app's last migration in Django's
    # backwards plan: an app whose migrations others depend on goes after those others.
    last = {m.app_label: i for i, m in enumerate(undo)}
    wanted = dict(targets)
    # An app reversed only because its migrations depend on another's: back to the parent
    # of its oldest migration to undo.
    for m in reversed(undo):
        if m.app_label not in wanted:
            parents = [p for p in graph.node_map[(m.app_label, m.name)].parents
                       if p.key[0] == m.app_label]
            wanted[m.app_label] = parents[0].key[1] if parents else None
    commands = [[app, wanted.get(app) or "zero"] for app in sorted(last, key=last.get)]
    return {"migrations": [f"{m.app_label}.{m.name}" for m in undo], "commands": commands,
            "irreversible": irreversible, "problems": problems}
