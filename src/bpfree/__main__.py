from bpfree.cli import main

main()
