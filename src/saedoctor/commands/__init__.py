"""The command-line commands (typer); `saedoctor.cli` builds the app from them.

    exit_status.py  exit codes, one-line errors (`handled_errors`), `--fail-on` gating
    params.py       typer options derived from an options dataclass (`with_options`)
    views.py        writing and printing a report's views
    diagnose.py     `saedoctor diagnose`
    reports.py      `saedoctor report`, `compare`, `filter`
    train.py        `saedoctor train`
    train_runs.py   the runs `train` is asked for: preset → config file → flags, or a report
    demo.py         `saedoctor demo`
    cache.py        `saedoctor cache-activations`

Each command module has `register(app)`; none imports `saedoctor.cli`.
"""
