from maepp.bench import run

run()
