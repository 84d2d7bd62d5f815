"""Recipes: parsing, validation, defaults and canonical form. Knows nothing of torch or models."""

from wanflow.families.spec import ComponentSpec, FamilyLookup, FamilySpec, StaticFamilies
from wanflow.recipe.resolve import ResolvedRecipe, load_recipe, load_recipe_text
from wanflow.recipe.schema import Recipe

__all__ = ["ComponentSpec", "FamilyLookup", "FamilySpec", "Recipe", "ResolvedRecipe", "StaticFamilies",
           "load_recipe", "load_recipe_text"]
