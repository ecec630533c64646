/* fake driver */
int core;
