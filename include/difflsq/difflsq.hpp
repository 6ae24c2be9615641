// difflsq — differentiable, matrix-free least squares. Umbrella header.
#pragma once

#include "cgls.hpp"
#include "convolution.hpp"
#include "lsmr.hpp"
#include "layer.hpp"
#include "lsqr.hpp"
#include "method.hpp"
#include "nullspace.hpp"
#include "operator.hpp"
#include "options.hpp"
#include "parameterized.hpp"
#include "preconditioner.hpp"
#include "projections.hpp"
#include "workspace.hpp"
