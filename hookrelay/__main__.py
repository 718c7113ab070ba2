from hookrelay.cli import main

main()
