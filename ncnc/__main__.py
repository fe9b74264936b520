from ncnc.cli import main

main()
