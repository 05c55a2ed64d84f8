from maepp.tools.bench import run

run()
