from oarlock.cli import main

main()
