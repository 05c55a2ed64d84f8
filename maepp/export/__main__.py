from maepp.export.cli import run

run()
