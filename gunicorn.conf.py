# gunicorn reads this file from the working directory: `gunicorn relay:app` gets our settings.
from hookrelay.gunicorn_conf import *  # noqa: F403
