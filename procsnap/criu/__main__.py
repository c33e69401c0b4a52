from ..logs import leave
from . import main

leave(main())
