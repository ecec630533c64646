/* fake driver */
int xsc;
