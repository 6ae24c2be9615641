// difflsq — differentiable, matrix-free least squares. Umbrella header.
#pragma once

#include "cgls.hpp"
#include "lsmr.hpp"
#include "lsqr.hpp"
#include "operator.hpp"
#include "options.hpp"
#include "preconditioner.hpp"
#include "workspace.hpp"
