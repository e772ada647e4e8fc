from midprobe.cli import main

raise SystemExit(main())
