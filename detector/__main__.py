from detector.cli import run

run()
