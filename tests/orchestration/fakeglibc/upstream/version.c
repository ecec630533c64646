#include <stdio.h>

static const char banner[] =
"GNU C Library (fake) release version 1.0.\n"
"For bug reporting instructions, please see the fake.\n";

int main(void)
{
  fputs(banner, stdout);
  return 0;
}
