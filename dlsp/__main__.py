from dlsp.cli import main

raise SystemExit(main())
