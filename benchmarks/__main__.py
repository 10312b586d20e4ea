from benchmarks.suite.cli import main

main()
