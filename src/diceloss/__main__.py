from diceloss.cli import main

raise SystemExit(main())
