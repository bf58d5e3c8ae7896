"""``python -m xray_cli``: the same as the ``xray`` console script."""

from xray_cli.main import main

main()
