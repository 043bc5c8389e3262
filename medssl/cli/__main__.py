from medssl.cli import main

main()
