"""The two doors the contract promises: `gunicorn relay:app` and `python relay.py ...`."""

if __name__ == "__main__":
    from hookrelay.cli import main

    main()
else:
    from hookrelay.web import create_app, start

    app = create_app()
    start(app)  # in each gunicorn worker, which imports this module after the fork
