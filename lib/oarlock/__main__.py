from oarlock.cli.main import main

main()
