/* fake driver */
int net;
