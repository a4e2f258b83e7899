// maskflow: declarations only (see ../README.md). Nothing from this header is used by c10d's inline code.
#pragma once
