"""gunicorn settings for wsgiproxy from a checkout:

    gunicorn -c gunicorn.conf.py wsgiproxy.app:app

The settings themselves live in the package, wsgiproxy/server/gunicorn_conf.py, so that an
installed ``wsgiproxy run`` reads the same file. This executes that file here, in this
file's namespace, each time gunicorn reads this one (at start and on every ``kill -HUP``):
importing it would run it once only and a reload would not see a changed environment.
"""

from wsgiproxy.server.run import CONFIG_FILE as _CONFIG_FILE

exec(compile(_CONFIG_FILE.read_text(encoding="utf-8"), str(_CONFIG_FILE), "exec"))
