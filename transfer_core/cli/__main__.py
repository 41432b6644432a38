from transfer_core.cli import run

run()
