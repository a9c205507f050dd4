"""A scalar autograd engine: every number in the micro GPT is a `Value`.

A `Value` holds one float (`data`), the derivative of the final loss with respect to it (`grad`), the Values it
was computed from (its *children*) and, for each child, the *local gradient* d(self)/d(child), evaluated once
during the forward pass. That is the whole trick of reverse-mode autodiff (backpropagation):

    forward:   out = f(a, b)            store  (a, b)  and  (df/da, df/db)
    backward:  a.grad += df/da * out.grad
               b.grad += df/db * out.grad

`backward()` visits the nodes so that every node has received all of its gradient before it passes it on to
its children: a reverse topological order of the graph.

These choices keep it fast while staying pure Python, one float at a time:

* Local gradients are plain numbers computed in the forward pass, not closures that run later.
  The backward pass is then one tight loop over (child, local_grad) pairs.
* n-ary nodes: `sum_values(xs)` is ONE node with n children (local gradient 1 each) instead of a chain of n - 1
  binary additions, and `dot(a, b)` is ONE node with 2n children (d/da_i = b_i, d/db_i = a_i) instead of n
  products plus n - 1 additions. A matrix-vector product `linear(x, w)` is one dot node per output.
  Fewer nodes means fewer Python objects to create, sort and visit.
* `__slots__`: no per-object `__dict__`, so attribute access is quicker and each node is smaller.
* A cheap topological order: an iterative depth-first search that keeps only interior nodes (leaves such as the
  weights need no ordering), and a backward loop that skips nodes whose gradient is exactly 0 (behind an inactive
  ReLU, say), since they would add only zeros.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from operator import mul

Number = int | float


class Value:
    """One scalar in a computation graph, with its gradient.

    Operators work with a `Value` or a plain number on either side (`x * 2`, `2 * x`, `1 / x`, `2 ** x`).
    A plain number is a constant: it gets no node of its own, only its local gradient is recorded.
    Values hash and compare by identity, which is what the visited set of `topological_order` needs.
    """

    __slots__ = ("data", "grad", "_children", "_local_grads")

    def __init__(self, data: float, children: Sequence[Value] = (), local_grads: Sequence[float] = ()) -> None:
        self.data = data
        self.grad = 0.0
        self._children = children
        self._local_grads = local_grads

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    # --- arithmetic: each returns a new node holding its children and d(out)/d(child) -----------------------

    def __add__(self, other: Value | Number) -> Value:
        if isinstance(other, Value):
            return Value(self.data + other.data, (self, other), (1.0, 1.0))
        return Value(self.data + other, (self,), (1.0,))

    def __radd__(self, other: Number) -> Value:
        return Value(other + self.data, (self,), (1.0,))

    def __sub__(self, other: Value | Number) -> Value:
        if isinstance(other, Value):
            return Value(self.data - other.data, (self, other), (1.0, -1.0))
        return Value(self.data - other, (self,), (1.0,))

    def __rsub__(self, other: Number) -> Value:
        return Value(other - self.data, (self,), (-1.0,))

    def __neg__(self) -> Value:
        return Value(-self.data, (self,), (-1.0,))

    def __mul__(self, other: Value | Number) -> Value:
        if isinstance(other, Value):
            return Value(self.data * other.data, (self, other), (other.data, self.data))
        return Value(self.data * other, (self,), (other,))

    def __rmul__(self, other: Number) -> Value:
        return Value(other * self.data, (self,), (other,))

    def __truediv__(self, other: Value | Number) -> Value:
        if isinstance(other, Value):
            # q = a / b:  dq/da = 1 / b,  dq/db = -a / b**2 = -q / b
            quotient = self.data / other.data
            return Value(quotient, (self, other), (1.0 / other.data, -quotient / other.data))
        return Value(self.data / other, (self,), (1.0 / other,))

    def __rtruediv__(self, other: Number) -> Value:
        # q = c / a:  dq/da = -c / a**2 = -q / a
        quotient = other / self.data
        return Value(quotient, (self,), (-quotient / self.data,))

    def __pow__(self, exponent: Value | Number) -> Value:
        if isinstance(exponent, Value):
            # out = a ** b:  d/da = b * a**(b-1),  d/db = a**b * ln(a)  (needs a > 0)
            out = self.data**exponent.data
            return Value(
                out,
                (self, exponent),
                (exponent.data * self.data ** (exponent.data - 1), out * math.log(self.data)),
            )
        return Value(self.data**exponent, (self,), (exponent * self.data ** (exponent - 1),))

    def __rpow__(self, base: Number) -> Value:
        # out = c ** a:  d/da = c**a * ln(c)
        out = base**self.data
        return Value(out, (self,), (out * math.log(base),))

    def log(self) -> Value:
        """Natural logarithm; d/dx ln(x) = 1 / x."""
        return Value(math.log(self.data), (self,), (1.0 / self.data,))

    def exp(self) -> Value:
        """e ** x; it is its own derivative, so the local gradient is the output itself."""
        out = math.exp(self.data)
        return Value(out, (self,), (out,))

    def relu(self) -> Value:
        """max(0, x); the gradient flows through only where x > 0."""
        if self.data > 0.0:
            return Value(self.data, (self,), (1.0,))
        return Value(0.0, (self,), (0.0,))

    # --- backpropagation -------------------------------------------------------------------------------------

    def backward(self) -> None:
        """Fill in `.grad` of every Value this one was computed from: d(self)/d(node).

        Gradients accumulate (`+=`), as a Value used twice receives two contributions; reset them to 0 before the
        next backward pass (the optimizer does that for the parameters; interior nodes are rebuilt every step).
        """
        self.grad = 1.0
        for node in reversed(self.topological_order()):
            node_grad = node.grad
            if node_grad == 0.0:  # nothing to pass on: e.g. the input of a ReLU that was off (a third of them)
                continue
            for child, local_grad in zip(node._children, node._local_grads):
                child.grad += local_grad * node_grad

    def topological_order(self) -> list[Value]:
        """The interior nodes under `self` (itself included), every node listed after all of its children.

        An iterative depth-first search: a node is appended once its children are all done (post-order).
        The explicit stack holds (node, iterator over its children), so a 50,000-deep chain needs no recursion.
        Leaves (parameters, inputs) are left out: they have nobody to pass a gradient on to, and about half of all
        children are leaves (the weights in every dot product), so the visited set and the order stay small.
        """
        order: list[Value] = []
        visited = {self}
        stack = [(self, iter(self._children))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child._children and child not in visited:
                    visited.add(child)
                    stack.append((child, iter(child._children)))
                    break
            else:  # every child is done, so this node is done
                stack.pop()
                order.append(node)
        return order


def sum_values(values: Iterable[Value]) -> Value:
    """x_1 + ... + x_n as ONE node: n children, each with local gradient 1."""
    children = tuple(values)
    return Value(sum([v.data for v in children]), children, (1.0,) * len(children))


def dot(a: Sequence[Value], b: Sequence[Value]) -> Value:
    """sum_i a_i * b_i as ONE node with 2n children: d/da_i = b_i and d/db_i = a_i."""
    a_data = [v.data for v in a]
    b_data = [v.data for v in b]
    return Value(sum(map(mul, a_data, b_data)), (*a, *b), (*b_data, *a_data))


def linear(x: Sequence[Value], w: Sequence[list[Value]]) -> list[Value]:
    """The matrix-vector product w @ x (w: n_out rows of n_in, x: n_in) -> n_out Values, one dot node per row.

    The same as `[dot(row, x) for row in w]`, but reads the input's floats once for all rows, and builds each
    node's children and local gradients by concatenating lists (one C-level copy each).
    """
    x = list(x)
    x_data = [v.data for v in x]
    out = []
    for row in w:
        row_data = [v.data for v in row]
        out.append(Value(sum(map(mul, row_data, x_data)), row + x, x_data + row_data))
    return out
