// nerve._core: the one private extension module; each area binds itself.
#include "common.hpp"

PYBIND11_MODULE(NERVE_MODULE_NAME, m) {
  m.doc() = "nerve's C++ core (private: use the nerve package)";
  nerve::bind::bind_core(m);
  nerve::bind::bind_activation(m);
  nerve::bind::bind_loss(m);
  nerve::bind::bind_optim(m);
  nerve::bind::bind_layers(m);
  nerve::bind::bind_sparse(m);
}
