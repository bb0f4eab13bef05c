"""One unattended night of bayes-merger, for cron or a systemd timer.

    bayes-merger-overnight --config conf/night.yaml [--deadline 07:00] [OVERRIDE ...]

It takes a lock on the config's run.dir, has ``bayes-merger --check`` check its first start (a bad input
ends the night before the WebUI is started), starts the WebUI if WEBUI_COMMAND is set, waits until its
API answers, sets the options that keep its RAM flat, then runs ``bayes-merger``: it resumes the
newest unfinished run under run.dir (a run folder whose run.json has no ``finished_at``), else it
starts a new one. When the WebUI dies mid-run it restarts the WebUI and resumes, and when a signal
kills bayes-merger (the OOM killer) it resumes, up to ``--max-restarts`` times in all. At the deadline,
or on SIGTERM / Ctrl-C, bayes-merger gets one Ctrl-C: it finishes the trial in flight, hands the WebUI
back and exits, and the next night resumes; only if it still runs after ``--run-stop-grace`` (180 s)
does a second Ctrl-C stop it at once, and SIGKILL 30 s after that. Its log and bayes-merger's go into one file
per night, the WebUI's console into a second one beside it; the WebUI it started is stopped at the
end (its process group: SIGTERM, then SIGKILL). The WebUI may be a ComfyUI (``webui.backend: comfyui``
in the config): it is ready when ``GET /system_stats`` answers, and WEBUI_COMMAND starts it (e.g.
``python main.py --listen 127.0.0.1 --port 8188`` with WEBUI_CWD its folder); it has no options to set.

bayes-merger runs as a child process in its own process group. Settings come from flags, else environment variables (``--env-file`` loads KEY=VALUE lines for
variables not already set); ``--help`` lists them.

Exit codes: 0 the run finished its budget, or was stopped at the deadline to be resumed; otherwise
bayes-merger's own code (1 no successful trial, 2 config, 3 checkpoint/merge, 4 WebUI, 5 scorer,
6 stopped but resumable: the WebUI kept dying, or bayes-merger kept being killed by a signal); 69 the
WebUI could not be started or never answered; 70 a bug in the runner (traceback in the log); 75 another
overnight run holds the lock of this run.dir; 128 + N when the runner was stopped by signal N (129 SIGHUP,
130 SIGINT, 143 SIGTERM), the run kept as at the deadline.

    settings.py   flags, environment, env file, deadline, the composed config (``bayes-merger --cfg job``),
                  the first start's ``--check``
    processes.py  the run.dir lock, the WebUI process it manages, the WebUI probe (the package's clients)
    night.py      one night: start/restart the WebUI, run or resume bayes-merger, deadline and signals
    cli.py        ``bayes-merger-overnight`` (also ``python -m bayes_merger.overnight``): logging, exit codes
"""
